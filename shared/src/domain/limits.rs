//! The size limits on what callers send and what Pulse renders. Documented in
//! `docs/send-path.md` ("Input: addresses, text and limits"); every limit is checked where the
//! input enters (ingest, manual enrollment, sequence create and edit) or, for rendered mail,
//! where the scheduler renders it. Constants only: no I/O.

/// A lead's text field (first name, last name, time zone), a tag, a list name or an event id.
pub const TEXT_BYTES: usize = 1024;
/// One attribute value, as JSON.
pub const ATTRIBUTE_VALUE_BYTES: usize = 4 * 1024;
/// Attributes of one lead (one event's, and what the lead keeps).
pub const ATTRIBUTES: usize = 100;
/// All attributes of one event, and all a lead keeps (names plus values as JSON).
pub const ATTRIBUTES_BYTES: usize = 64 * 1024;
/// A rendered subject: one header line (RFC 5322's 998-character line limit).
pub const SUBJECT_BYTES: usize = 998;
/// A rendered body.
pub const BODY_BYTES: usize = 1024 * 1024;
/// An email address (RFC 5321's path limit).
pub const ADDRESS_BYTES: usize = 254;
