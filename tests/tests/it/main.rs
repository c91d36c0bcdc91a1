//! Integration and end-to-end tests: every test starts its own isolated Pulse against the real
//! PostgreSQL, RabbitMQ and Redis, and the send tests against a real SMTP server.

mod api;
mod cli;
mod contract;
mod control;
mod dkim;
mod edit_preview;
mod fairness;
mod faults;
mod guardrails;
mod hub;
mod identity;
mod inbound;
mod ingest;
mod keys;
mod ledger;
mod limits;
mod mailboxes;
mod message;
mod model;
mod observability;
mod optout;
mod providers;
mod recovery;
mod relay;
mod send_history;
mod send_path;
mod steps;
mod tls_clients;
mod traffic;
mod webhook_events;
mod webhooks;
