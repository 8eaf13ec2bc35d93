//! Adversary tests: an attacker with one foothold (a deployer's operator certificate, a worker
//! join token, a kept certificate of a removed, demoted or renewed node, a task, a socket to
//! the listener) tries to outlive, exceed or impersonate its grant, against real daemons.
//! Each test here failed before the fix it proves; SECURITY.md names them.

mod audit;
mod connections;
mod exec;
mod identity;
mod names;
