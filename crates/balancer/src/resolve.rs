//! Looking up the addresses of a host name: the system's resolver (which on Swarm answers
//! `tasks.<service>` with the address of every task), or one a test gives.

use std::{fmt, future::Future, io, net::IpAddr, pin::Pin, sync::Arc};

type Lookup = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Finds the addresses of a host name. A cheap handle: clone it.
#[derive(Clone, Default)]
pub struct Resolver(Kind);

#[derive(Clone, Default)]
enum Kind {
    #[default]
    System,
    Custom(Arc<dyn Fn(&str) -> Lookup + Send + Sync>),
}

impl Resolver {
    /// The system's resolver (`getaddrinfo`: /etc/hosts, then DNS).
    pub fn system() -> Self {
        Self(Kind::System)
    }

    /// Answers with `lookup(host)`, e.g. a fixed list a test changes.
    pub fn from_fn<F, Fut>(lookup: F) -> Self
    where
        F: Fn(&str) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<Vec<IpAddr>>> + Send + 'static,
    {
        Self(Kind::Custom(Arc::new(move |host| Box::pin(lookup(host)))))
    }

    /// The addresses of `host`, sorted, each once; empty when it has none.
    pub async fn lookup(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let mut addresses: Vec<IpAddr> = match &self.0 {
            Kind::System => tokio::net::lookup_host((host, 0))
                .await?
                .map(|address| address.ip())
                .collect(),
            Kind::Custom(lookup) => lookup(host).await?,
        };
        addresses.sort_unstable();
        addresses.dedup();
        Ok(addresses)
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Kind::System => "Resolver::System",
            Kind::Custom(_) => "Resolver::Custom",
        })
    }
}
