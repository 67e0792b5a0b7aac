//! Operator actions that the admin API and the `atp` CLI share, over the adapters alone (so the
//! gateway does not link the roles): [`dlq`], replaying dead letters once their cause is fixed.

pub mod dlq;
