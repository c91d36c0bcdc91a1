//! Domain rules that need no I/O: timing, templates, input validation.

pub mod limits;
pub mod template;
pub mod timing;
pub mod validate;
pub mod window;
