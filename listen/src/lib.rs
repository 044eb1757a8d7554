//! `tollgate-listen`: what both servers, the webhook and the proxy, do
//! around hyper with a connection they accepted, and with a request body
//! over their limit ([`capped_body`]).
//!
//! hyper-util's auto builder tells HTTP/1.1 from an h2 preface by reading
//! the first bytes, and that detection has no timeout; hyper's HTTP/1.1
//! header read timeout only starts after it. A client that completed the
//! TLS handshake and then sent nothing, or dribbled `PRI * HTTP/2.0`, held
//! a connection and its task forever (slowloris). [`first_request`] closes
//! a connection that has delivered no request head in time.

pub mod capped_body;
pub mod first_request;
