//! The states of Pulse's four state machines, as types: a sequence's status, an enrollment's
//! status, a step run's state and a send-ledger row's state. Each is stored as its
//! SCREAMING_SNAKE_CASE name in a `text` column with a CHECK constraint, read and bound through
//! sqlx, serialized the same way in the API, and described as an enum in the OpenAPI document.
//!
//! This module owns the vocabulary only. The transitions live with their owners: the ledger
//! (`ledger`: claims, outcomes, stale work, requeues), the schedule (`schedule`: advance, skip
//! and end, retime) and the control plane's pause/resume/cancel, which call those.
//!
//! SQL statements keep the states as literals (`state = 'QUEUED'`): the partial indexes'
//! predicates name them, and PostgreSQL uses a partial index only when the query's own literal
//! implies the predicate; a bound parameter would not. Every literal must be one of the names
//! here (the CHECK constraints refuse anything else, and `tests/tests/it/ledger.rs` checks that
//! the constraints and these types list the same states).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use sqlx::{
    Decode, Encode, Postgres, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef},
};
use utoipa::ToSchema;

/// A state name that is not one of its type's.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not one of {expected}")]
pub struct UnknownState {
    pub value: String,
    pub expected: String,
}

macro_rules! states {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        // The OpenAPI schema reads this (a variant's `rename` from a macro argument is lost to
        // it); each name is its variant's in capitals, as `rename` says too.
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every state, in the order of the lifecycle.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and serialized name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The names, comma-separated, for error messages.
            pub fn names() -> String {
                Self::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState { value: s.to_owned(), expected: Self::names() }),
                }
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl<'r> Decode<'r, Postgres> for $name {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<Postgres>>::decode(value)?.parse()?)
            }
        }

        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}

states! {
    /// A sequence's status (`sequences.status`).
    SequenceStatus {
        /// Sending.
        Active = "ACTIVE",
        /// Taken control of: nothing goes out until it is resumed.
        Paused = "PAUSED",
        /// Soft-deleted: nothing goes out, ever again.
        Deleted = "DELETED",
    }
}

states! {
    /// An enrollment's status (`enrollments.status`).
    EnrollmentStatus {
        /// In the sequence: its next step is scheduled, queued or being sent.
        Active = "ACTIVE",
        /// Every step went out (or was skipped).
        Completed = "COMPLETED",
        /// Ended by an operator, an edit, a merge or an end date.
        Cancelled = "CANCELLED",
        /// The lead could not be enrolled (unsubscribed, bounced, no address).
        Ineligible = "INELIGIBLE",
        /// A step failed for good.
        Failed = "FAILED",
    }
}

states! {
    /// A step run's state (`step_runs.state`).
    StepRunState {
        /// Waiting for its due time.
        Scheduled = "SCHEDULED",
        /// Content frozen and published to RabbitMQ.
        Queued = "QUEUED",
        /// Accepted by the relay.
        Sent = "SENT",
        /// Will never go out (deleted step, passed end date, paused past its window).
        Skipped = "SKIPPED",
        /// Its enrollment ended before it went out.
        Cancelled = "CANCELLED",
        /// Refused for good, or given up on.
        Failed = "FAILED",
        /// May or may not have reached the relay: an operator resolves it.
        Unknown = "UNKNOWN",
    }
}

states! {
    /// A send-ledger row's state (`send_ledger.state`): the idempotency key's.
    LedgerState {
        /// Claimed by a sender, which may be sending it now.
        Sending = "SENDING",
        /// Accepted by the relay: never sent again.
        Sent = "SENT",
        /// Refused for now: claimed again when due.
        Deferred = "DEFERRED",
        /// Refused for good.
        Failed = "FAILED",
        /// The body may have reached the relay and no answer was recorded.
        Unknown = "UNKNOWN",
        /// Sent, then bounced for good (a DSN, a provider's report): the address is suppressed.
        Bounced = "BOUNCED",
        /// Sent, then reported as spam by its recipient: the address is suppressed.
        Complained = "COMPLAINED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for s in StepRunState::ALL {
            assert_eq!(s.as_str().parse::<StepRunState>().ok(), Some(*s));
            let json = serde_json::to_string(s).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        // The OpenAPI document lists the same names a client receives.
        fn schema_names<T: utoipa::PartialSchema>() -> serde_json::Value {
            serde_json::to_value(T::schema()).unwrap_or_default()["enum"].clone()
        }
        let names = |all: Vec<&str>| serde_json::json!(all);
        assert_eq!(
            schema_names::<SequenceStatus>(),
            names(SequenceStatus::ALL.iter().map(|s| s.as_str()).collect())
        );
        assert_eq!(
            schema_names::<EnrollmentStatus>(),
            names(EnrollmentStatus::ALL.iter().map(|s| s.as_str()).collect())
        );
        assert_eq!(
            schema_names::<StepRunState>(),
            names(StepRunState::ALL.iter().map(|s| s.as_str()).collect())
        );
        assert_eq!(
            schema_names::<LedgerState>(),
            names(LedgerState::ALL.iter().map(|s| s.as_str()).collect())
        );
        let err = "queued".parse::<LedgerState>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some(
                "\"queued\" is not one of SENDING, SENT, DEFERRED, FAILED, UNKNOWN, BOUNCED, COMPLAINED"
            )
        );
    }
}
