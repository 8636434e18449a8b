//! berth: the composition root. Configuration, the command line, `serve` and the admin channel,
//! wiring the storage engine (`berth-store`) to the HTTP API (`berth-api`), and the operator's
//! view of a server: metrics, health checks and logging.

pub mod admin;
pub mod cli;
pub mod config;
pub mod health;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod reload;
pub mod serve;
