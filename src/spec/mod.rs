//! The rules of a service spec, in one place and pure (no I/O, no async): the validator the
//! manager applies to every spec, the image-reference grammar, the name rule, secret names and
//! targets, and durations. The CLI, the Compose loader, the manager and the fuzz targets all
//! check through here, so each rule is written once.

pub mod config_target;
pub mod duration;
pub mod image;
pub mod mount;
pub mod name;
pub mod secret;
pub mod secret_target;
pub mod service;
