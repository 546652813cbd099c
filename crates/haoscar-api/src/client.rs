//! Client side of the control API: HTTP/1.1 over a Unix socket or TCP
//! (hyper, one connection per request), decoding the JSON shapes of
//! `haoscar_types::api`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Where an agent's API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {endpoint}: {source} (is `haoscar agent` running on this node?)"
    )]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("the agent at {endpoint} did not answer within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("HTTP error talking to {endpoint}: {message}")]
    Http { endpoint: String, message: String },
    #[error("the agent at {endpoint} answered {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from {endpoint}: {message}")]
    Decode { endpoint: String, message: String },
}

/// A control-API client.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeout: Duration,
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Self {
        Client {
            endpoint,
            timeout: Duration::from_secs(5),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// GETs `path` and decodes the JSON body.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.get(path).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            endpoint: self.endpoint.to_string(),
            message: e.to_string(),
        })
    }

    /// POSTs `body` as JSON to `path` and decodes the JSON answer.
    pub async fn post_json<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let data = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            endpoint: self.endpoint.to_string(),
            message: e.to_string(),
        })?;
        let answer = self.send(path, Some(Bytes::from(data))).await?;
        serde_json::from_slice(&answer).map_err(|e| ClientError::Decode {
            endpoint: self.endpoint.to_string(),
            message: e.to_string(),
        })
    }

    /// GETs `path`; non-2xx answers become [`ClientError::Status`].
    pub async fn get(&self, path: &str) -> Result<Bytes, ClientError> {
        self.send(path, None).await
    }

    async fn send(&self, path: &str, body: Option<Bytes>) -> Result<Bytes, ClientError> {
        let fut = self.request(path, body);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                endpoint: self.endpoint.to_string(),
                timeout: self.timeout,
            }),
        }
    }

    async fn request(&self, path: &str, body: Option<Bytes>) -> Result<Bytes, ClientError> {
        let ep = self.endpoint.to_string();
        let connect = |source| ClientError::Connect {
            endpoint: ep.clone(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(connect)?;
                self.exchange(s, "localhost", path, body).await
            }
            Endpoint::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await.map_err(connect)?;
                self.exchange(s, &a.to_string(), path, body).await
            }
        }
    }

    async fn exchange<S>(
        &self,
        stream: S,
        host: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ep = self.endpoint.to_string();
        let http = |e: hyper::Error| ClientError::Http {
            endpoint: ep.clone(),
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let builder = match &body {
            Some(_) => Request::post(path).header(hyper::header::CONTENT_TYPE, "application/json"),
            None => Request::get(path),
        };
        let req = builder
            .header(hyper::header::HOST, host)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::Http {
                endpoint: ep.clone(),
                message: e.to_string(),
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<haoscar_types::api::ApiError>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Status {
                endpoint: ep,
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }
}
