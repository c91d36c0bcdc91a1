//! `pulse-shared`: everything two or more Pulse roles need — configuration, domain rules, the
//! database, messaging, pause flags, the send ledger and HTTP plumbing. Nothing here runs a loop
//! or owns a route; the services do.

pub mod audit;
pub mod batch;
pub mod config;
pub mod db;
pub mod domain;
pub mod enroll;
pub mod feedback;
pub mod guardrails;
pub mod health;
pub mod http;
pub mod identity;
pub mod keys;
pub mod ledger;
pub mod limits;
pub mod mailbox;
pub mod messaging;
pub mod metrics;
pub mod model;
pub mod pause;
pub mod schedule;
pub mod smtp_url;
pub mod state;
pub mod strict_json;
pub mod suppression;
pub mod telemetry;
pub mod transitions;
pub mod unsubscribe;
pub mod verp;
pub mod webhooks;
pub mod workers;

pub use config::Settings;
