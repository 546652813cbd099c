//! The agent's control API: versioned HTTP/JSON routes (`/v1/...`) served over
//! TCP and a Unix socket, and the client the `haoscar` CLI uses to reach them.
//! The CLI talks to the agent only through this API; the web console will too.

pub mod client;
pub mod server;

pub use client::{Client, ClientError, Endpoint};
pub use server::{ActionFuture, AgentView, ServeError, Server, VerifyFuture};
