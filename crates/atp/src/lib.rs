//! The `atp` binary's library: `serve` (any subset of roles in one process), the dev stack,
//! key files, and the command line ([`cli`]). Tests start ATP through [`serve::start`], the
//! same entry point as `atp serve`. (The benchmarks are `atp-bench`, outside the product.)

pub mod admin;
pub mod api;
pub mod cli;
pub mod dev;
pub mod dlq;
pub mod keys;
pub mod onboarding;
pub mod relay;
pub mod serve;
pub mod verify;
