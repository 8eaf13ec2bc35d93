//! skep PKI
