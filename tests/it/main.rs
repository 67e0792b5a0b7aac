//! Every integration scenario, in one test binary, against real servers (see `harness/`).

// Test code: a panic with a message is how a failed step is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Tests build raw NATS headers on purpose, hostile ones included; product code may not.
#![allow(clippy::disallowed_methods)]

mod admin_trail;
mod batch;
mod cluster;
mod crash;
mod crash_points;
mod dlq;
mod editions;
mod export;
mod faults;
mod gateway;
mod hostile;
mod ingest;
mod integrity;
mod investigator;
mod kafka_relay;
mod lanes;
mod limits;
mod metrics;
mod nats_auth;
mod openapi;
mod policy;
mod privacy;
mod producer;
mod registry;
mod relay;
mod replay;
mod secrets;
mod streams;
mod tenancy;
mod tidy;
mod traces;
mod webhook;
