//! Address change notifications: the decoding of kernel address messages
//! into [`HeldAddress`] / [`AddressEvent`], the background task that reads
//! the `RTNLGRP_IPV4_IFADDR` / `RTNLGRP_IPV6_IFADDR` multicast subscription
//! and fans events out, and the receiver handed to callers ([`VipWatch`]).

use std::net::IpAddr;
use std::time::Duration;

use futures_util::stream::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressProtocol,
};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;
use tokio::sync::broadcast;

use super::spec::{ADDRESS_PROTOCOL, LABEL_SUFFIX};

/// Kernel value of an infinite lifetime.
const INFINITY_LIFE_TIME: u32 = u32::MAX;

/// An address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldAddress {
    pub address: IpAddr,
    pub prefix: u8,
    pub ifindex: u32,
    /// Interface name; `None` if it could not be resolved (e.g. the
    /// interface is being deleted).
    pub interface: Option<String>,
    /// `IFA_LABEL` (IPv4 only).
    pub label: Option<String>,
    /// Remaining valid lifetime; `None` = forever (a permanent address).
    pub valid_lft: Option<Duration>,
    /// Remaining preferred lifetime; `None` = forever.
    pub preferred_lft: Option<Duration>,
    /// IPv6 duplicate address detection still running (not yet usable).
    pub tentative: bool,
    /// Carries HA-OSCAR's ownership marker ([`ADDRESS_PROTOCOL`], or for
    /// IPv4 a label ending in `:ha`).
    pub ours: bool,
}

impl HeldAddress {
    /// Decode a kernel address message; `None` if it carries no address.
    pub(crate) fn from_message(msg: &AddressMessage) -> Option<Self> {
        let mut local = None;
        let mut address = None;
        let mut label = None;
        let mut cache = None;
        let mut proto = None;
        let mut flags = None;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(a) => local = Some(*a),
                AddressAttribute::Address(a) => address = Some(*a),
                AddressAttribute::Label(l) => label = Some(l.clone()),
                AddressAttribute::CacheInfo(c) => cache = Some(*c),
                AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
                AddressAttribute::Flags(f) => flags = Some(*f),
                _ => {}
            }
        }
        // IFA_LOCAL is the interface's own address (IPv4; IPv6 with a peer),
        // IFA_ADDRESS otherwise.
        let address = local.or(address)?;
        let tentative = match flags {
            Some(f) => f.contains(AddressFlags::Tentative),
            None => msg.header.flags.contains(AddressHeaderFlags::Tentative),
        };
        let lft = |v: u32| (v != INFINITY_LIFE_TIME).then(|| Duration::from_secs(v.into()));
        let ours = proto == Some(ADDRESS_PROTOCOL)
            || label.as_deref().is_some_and(|l| l.ends_with(LABEL_SUFFIX));
        Some(HeldAddress {
            address,
            prefix: msg.header.prefix_len,
            ifindex: msg.header.index,
            interface: None,
            label,
            valid_lft: cache.and_then(|c| lft(c.ifa_valid)),
            preferred_lft: cache.and_then(|c| lft(c.ifa_preferred)),
            tentative,
            ours,
        })
    }
}

/// A change to the addresses of this network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressEvent {
    /// An address was added or changed (including each renewal).
    Added(HeldAddress),
    /// An address was removed: deleted by someone, expired, or its
    /// interface went away.
    Removed(HeldAddress),
    /// Notifications were lost (kernel socket overrun, or this receiver
    /// fell behind by `missed` events; 0 = unknown, a kernel overrun):
    /// resynchronise with
    /// [`super::VipManager::owned`] / [`super::VipManager::held`].
    Lost { missed: u64 },
}

impl AddressEvent {
    /// The address concerned, if any.
    pub fn address(&self) -> Option<&HeldAddress> {
        match self {
            AddressEvent::Added(a) | AddressEvent::Removed(a) => Some(a),
            AddressEvent::Lost { .. } => None,
        }
    }
}

/// A subscription to [`AddressEvent`]s, from [`super::VipManager::watch`].
/// Only events after the subscription are seen.
#[derive(Debug)]
pub struct VipWatch {
    pub(crate) rx: broadcast::Receiver<AddressEvent>,
}

impl VipWatch {
    /// The next event; `None` once the manager is gone.
    pub async fn recv(&mut self) -> Option<AddressEvent> {
        match self.rx.recv().await {
            Ok(ev) => Some(ev),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(AddressEvent::Lost { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The events as a stream.
    pub fn into_stream(self) -> impl Stream<Item = AddressEvent> + Send + 'static {
        futures_util::stream::unfold(self, |mut w| async move {
            let ev = w.recv().await?;
            Some((ev, w))
        })
    }
}

/// Read the multicast subscription until it closes, publishing events.
/// `handle` (the manager's request connection) resolves interface names.
pub(crate) async fn monitor(
    mut incoming: impl Stream<
            Item = (
                NetlinkMessage<RouteNetlinkMessage>,
                rtnetlink::sys::SocketAddr,
            ),
        > + Unpin,
    handle: rtnetlink::Handle,
    tx: broadcast::Sender<AddressEvent>,
) {
    while let Some((msg, _)) = incoming.next().await {
        let event = match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                HeldAddress::from_message(&m).map(AddressEvent::Added)
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                HeldAddress::from_message(&m).map(AddressEvent::Removed)
            }
            NetlinkPayload::Overrun(_) => {
                tracing::warn!("address notifications lost (netlink socket overrun)");
                Some(AddressEvent::Lost { missed: 0 })
            }
            _ => None,
        };
        let Some(mut event) = event else { continue };
        if let AddressEvent::Added(a) | AddressEvent::Removed(a) = &mut event {
            a.interface = interface_name(&handle, a.ifindex).await;
            tracing::debug!(
                kind = if matches!(event, AddressEvent::Added(_)) { "added" } else { "removed" },
                address = ?event.address().map(|a| a.address),
                "address change"
            );
        }
        // No receiver is fine: nobody is watching.
        let _ = tx.send(event);
    }
    tracing::debug!("address monitor ended");
}

/// The name of interface `index`, if it (still) exists.
pub(crate) async fn interface_name(handle: &rtnetlink::Handle, index: u32) -> Option<String> {
    let mut links = handle.link().get().match_index(index).execute();
    let link = links.try_next().await.ok().flatten()?;
    link.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n),
        _ => None,
    })
}

/// Our marker as an `IFA_PROTO` attribute.
pub(crate) fn protocol_attribute() -> AddressAttribute {
    AddressAttribute::Protocol(AddressProtocol::from(ADDRESS_PROTOCOL))
}
