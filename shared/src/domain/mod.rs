//! Domain rules that need no I/O: timing, templates, what a rendered message says, input
//! validation.

pub mod content;
pub mod limits;
pub mod redact;
pub mod template;
pub mod timing;
pub mod validate;
pub mod window;
