//! The registry's integration suites in one test binary (one link instead of one per file):
//! each module drives the real server over HTTP on 127.0.0.1, or the `berth` binary.
//! `large.rs` stays its own binary because it measures the process's peak RSS.

mod cli;
mod clients;
mod config;
mod crash;
mod dedupe;
mod discovery;
mod errors;
mod gc;
mod gc_cli;
mod gc_race;
mod images;
mod layout;
mod limits;
mod management;
mod manifests;
mod meta_rebuild;
mod metastore;
mod operability;
mod power_loss;
mod pull;
mod push;
mod scrub;
mod scrub_cli;
mod smoke;
