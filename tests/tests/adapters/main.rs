//! Adapter tests against real servers and several engines: each module starts the real `iii`
//! binary (and the backend servers it needs) and talks to it as a user would.

mod bridge;
mod upstream_configs;
