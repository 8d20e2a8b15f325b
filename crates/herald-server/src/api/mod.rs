//! The publishers' API (`/v1/notify`, `/v1/users/…`): JSON in, JSON out, API key required.

pub mod publish;
pub mod users;
