//! The JSON API: for publishers (`/v1/notify`, `/v1/users/…`, API key required), the inbox
//! (`/v1/inbox…` for subscribers, `/v1/users/{user}/inbox…` for publishers), and listening to
//! topics (`/v1/listen` for subscribers, `/v1/topics/listen` for publishers).

pub mod inbox;
pub mod publish;
pub mod push;
pub mod topics;
pub mod users;
