//! Fault injection around any [`DeviceAccess`](crate::DeviceAccess): a
//! middleware that makes a well-behaved device misbehave on purpose, so
//! the driver's answer to a hostile device can be tested.
