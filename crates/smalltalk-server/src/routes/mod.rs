//! The HTTP routes, one module per resource, with the request and response
//! bodies they take and give (the schemas of `/openapi.json`).

pub mod agents;
pub mod events;
pub mod ops;
pub mod sessions;
pub mod state;
pub mod state_txn;
