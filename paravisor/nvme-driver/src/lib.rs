//! parastor's own NVMe driver: enables a controller the way Linux's nvme
//! driver does, identifies it, creates I/O queues and serves every
//! namespace as a parastor `Disk`, over a small device-access trait.
