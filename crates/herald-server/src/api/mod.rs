//! The JSON API: for publishers (`/v1/notify`, `/v1/users/…`, API key required) and the inbox
//! (`/v1/inbox…` for subscribers, `/v1/users/{user}/inbox…` for publishers).

pub mod inbox;
pub mod publish;
pub mod users;
