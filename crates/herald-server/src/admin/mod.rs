//! The admin listener's routes (`--admin-listen`): [`ui`], the operators' web page.

pub mod ui;
