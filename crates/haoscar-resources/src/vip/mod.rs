//! Virtual IP takeover: holding, renewing, announcing, releasing and
//! watching the cluster's virtual IPs on this node ([`VipManager`]). The
//! election decides *whether* this node holds a VIP; this module only does
//! it, with the kernel as the backstop against two holders.
//!
//! # How a VIP is held
//!
//! * Added with netlink `RTM_NEWADDR` + `NLM_F_REPLACE` (idempotent: no
//!   `EEXIST` when it is already there).
//! * Marked as HA-OSCAR's: `IFA_PROTO` = [`ADDRESS_PROTOCOL`] (both
//!   families) and, for IPv4, `IFA_LABEL` = `<ifname>:ha` (what `ip addr`
//!   shows; IPv6 addresses have no labels).
//! * With a finite kernel lifetime: valid_lft = preferred_lft =
//!   [`VipSpec::lifetime`]. If the agent hangs or dies, the kernel deletes
//!   the address by itself once the lifetime runs out.
//! * IPv6 addresses get `IFA_F_NODAD`, so they are usable at once (no
//!   tentative phase, no DAD delay).
//! * Then announced: gratuitous ARP (IPv4) or unsolicited Neighbor
//!   Advertisement (IPv6), `announce_count` times, `announce_interval`
//!   apart; the first synchronously, the rest in a background task that
//!   `release` (or a new `acquire`) stops. See [`frame`] for the layouts.
//!
//! # Timing: lifetime, renewal and takeover
//!
//! Let `L` be the lifetime (whole seconds) and `R` the renewal period.
//!
//! * The kernel deletes an address that was not renewed between `L` and
//!   about `L + 1 s` after its last renewal (its lifetime worker runs with
//!   sub-second slack; the lab test measures it).
//! * Renew with `R <= L / 4` (e.g. `L = 2 s`, `R = 500 ms`), so that three
//!   renewals in a row can be late or lost before the address expires.
//!   Never run `R` close to `L`: [`VipManager::renew`] refuses to re-create
//!   an address that has already expired, so a renewal that arrives too
//!   late surfaces as [`VipError::NotHeld`] rather than a silent re-take.
//! * The active head must stop renewing as soon as it loses its mandate;
//!   then its VIPs vanish within `L + 1 s` even if it cannot run `release`.
//! * Hence a standby that has *not* seen a graceful release (or a fence)
//!   must not `acquire` before `L + 1 s` after the last moment the old
//!   active could have renewed, i.e. the failure-detection deadline must be
//!   at least `L + 1 s` (plus heartbeat jitter). A graceful handover
//!   (`release` on the old active, then `acquire`) needs no such wait.
//!
//! # Operational notes
//!
//! * Neighbours update an *existing* ARP entry from a gratuitous ARP
//!   whatever their settings; creating a *new* entry from one needs
//!   `net.ipv4.conf.*.arp_accept=1` on the receiver. The same holds for
//!   unsolicited NAs (`net.ipv6.conf.*.accept_untracked_na`).
//! * If the VIP is the primary address of its subnet on the interface,
//!   deleting it (or its expiry) also deletes the subnet's secondary
//!   addresses unless `net.ipv4.conf.<if>.promote_secondaries=1`. Give
//!   the interface a permanent address in the VIP's subnet, or set that
//!   sysctl.
//! * All sockets (netlink, packet) are opened by [`VipManager::new`] in the
//!   network namespace of the calling thread and stay bound to it.
//! * Announcements are implemented for Ethernet interfaces; on others
//!   (e.g. IPoIB) the address is held but not announced (logged).

mod announce;
mod error;
pub mod frame;
mod spec;
mod watch;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, MulticastGroup};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use error::VipError;
pub use spec::{label_for, VipSpec, ADDRESS_PROTOCOL, LABEL_SUFFIX, MAX_LABEL_LEN};
pub use watch::{AddressEvent, HeldAddress, VipWatch};

use announce::{Announcement, Announcer, Bursts};
use error::{is_permission, netlink_errno};
use frame::Mac;

/// How many unread events a slow [`VipWatch`] may fall behind before it
/// sees [`AddressEvent::Lost`].
const WATCH_CAPACITY: usize = 1024;

/// Holds, renews, announces and releases VIPs on this node, and reports
/// address changes. One request netlink connection, one notification
/// subscription, one packet socket; all bound to the network namespace
/// that was current when it was created. Dropping it stops its background
/// tasks (connections, monitor, announcement bursts); addresses it holds
/// stay until they expire or are released.
#[derive(Debug)]
pub struct VipManager {
    handle: rtnetlink::Handle,
    /// `Err(errno)` when the packet socket could not be opened (typically
    /// EPERM without CAP_NET_RAW): adding addresses still works, announcing
    /// reports the error.
    announcer: Result<Arc<Announcer>, i32>,
    runtime: tokio::runtime::Handle,
    events: broadcast::Sender<AddressEvent>,
    tasks: Vec<JoinHandle<()>>,
    bursts: Bursts,
}

/// The interface facts a VIP operation needs.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    /// Ethernet address, if the interface is Ethernet.
    mac: Option<Mac>,
}

impl VipManager {
    /// Open the connections. Must be called inside a tokio runtime (tasks
    /// are spawned on it), from a thread in the network namespace to manage.
    pub fn new() -> Result<Self, VipError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| VipError::NoRuntime)?;
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| VipError::Socket {
            what: "netlink",
            source,
        })?;
        let (mconn, _mhandle, incoming) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(|source| VipError::Socket {
            what: "netlink multicast",
            source,
        })?;
        let announcer = match Announcer::open() {
            Ok(a) => Ok(Arc::new(a)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open packet socket: VIPs can be held but not announced (needs CAP_NET_RAW)");
                Err(e.raw_os_error().unwrap_or(libc::EIO))
            }
        };
        let (events, _) = broadcast::channel(WATCH_CAPACITY);
        let tasks = vec![
            runtime.spawn(conn),
            runtime.spawn(mconn),
            runtime.spawn(watch::monitor(incoming, handle.clone(), events.clone())),
        ];
        Ok(VipManager {
            handle,
            announcer,
            runtime,
            events,
            tasks,
            bursts: Bursts::default(),
        })
    }

    /// Take `vip`: add it (or refresh it, if already there) with a fresh
    /// lifetime and our marks, then announce it. Idempotent. On
    /// [`VipError::Announce`] the address is in place but the first
    /// announcement could not be sent (e.g. the link is down).
    pub async fn acquire(&self, vip: &VipSpec) -> Result<(), VipError> {
        vip.validate()?;
        let link = self.link(vip).await?;
        self.add(vip, &link).await?;
        tracing::info!(vip = %vip, lifetime_s = vip.lifetime.as_secs_f64(), "VIP acquired");
        self.announce(vip, &link)
    }

    /// Extend the lifetime of a held `vip` (no announcement). Call it
    /// every `lifetime / 4` or more often (see the module docs). Fails with
    /// [`VipError::NotHeld`] if the address is gone (expired or removed):
    /// re-taking it is a decision for the caller, via [`Self::acquire`].
    /// (The check and the refresh are two requests: an address expiring in
    /// between is re-created, which the renewal period rules out.)
    pub async fn renew(&self, vip: &VipSpec) -> Result<(), VipError> {
        vip.validate()?;
        let link = match self.link(vip).await {
            Err(VipError::InterfaceNotFound(_)) => return Err(not_held(vip)),
            other => other?,
        };
        if self.find(vip, link.index).await?.is_none() {
            tracing::warn!(vip = %vip, "renew: VIP is no longer held");
            return Err(not_held(vip));
        }
        self.add(vip, &link).await?;
        tracing::trace!(vip = %vip, "VIP renewed");
        Ok(())
    }

    /// Give `vip` up: stop its announcements and delete it. Idempotent: an
    /// absent address (or interface) is success.
    pub async fn release(&self, vip: &VipSpec) -> Result<(), VipError> {
        self.bursts.stop(&(vip.interface.clone(), vip.address));
        let link = match self.link(vip).await {
            Err(VipError::InterfaceNotFound(_)) => {
                tracing::info!(vip = %vip, "VIP released (interface absent)");
                return Ok(());
            }
            other => other?,
        };
        let msg = address_message(link.index, vip.address, vip.prefix);
        match self.handle.address().del(msg).execute().await {
            Ok(()) => {
                tracing::info!(vip = %vip, "VIP released");
                Ok(())
            }
            Err(e) if matches!(netlink_errno(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => {
                tracing::debug!(vip = %vip, "VIP release: already absent");
                Ok(())
            }
            Err(e) => Err(netlink_error("delete address", vip, e)),
        }
    }

    /// Whether `vip`'s address is currently assigned to its interface
    /// (whoever added it, any prefix, DAD finished). `false` if the
    /// interface does not exist.
    pub async fn held(&self, vip: &VipSpec) -> Result<bool, VipError> {
        let link = match self.link(vip).await {
            Err(VipError::InterfaceNotFound(_)) => return Ok(false),
            other => other?,
        };
        Ok(self
            .find(vip, link.index)
            .await?
            .is_some_and(|a| !a.tentative))
    }

    /// Every address in this namespace carrying HA-OSCAR's mark, with its
    /// remaining lifetime: what a starting agent must clean up.
    pub async fn owned(&self) -> Result<Vec<HeldAddress>, VipError> {
        let dump_err = |source| VipError::NetlinkDump {
            op: "dump addresses",
            source: Box::new(source),
        };
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(dump_err)?;
        let mut out = Vec::new();
        for m in &msgs {
            if let Some(mut a) = HeldAddress::from_message(m).filter(|a| a.ours) {
                a.interface = watch::interface_name(&self.handle, a.ifindex).await;
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Subscribe to address changes in this namespace (additions,
    /// renewals, removals, expiries) from now on.
    pub fn watch(&self) -> VipWatch {
        VipWatch {
            rx: self.events.subscribe(),
        }
    }

    /// The kernel's record of `vip`'s address on interface `index`.
    async fn find(&self, vip: &VipSpec, index: u32) -> Result<Option<HeldAddress>, VipError> {
        let mut req = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(vip.address);
        req.message_mut().header.family = family(vip.address);
        let msgs: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error("get address", vip, e))?;
        Ok(msgs
            .iter()
            .filter_map(HeldAddress::from_message)
            .find(|a| a.address == vip.address))
    }

    async fn link(&self, vip: &VipSpec) -> Result<Link, VipError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(vip.interface.clone())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(VipError::InterfaceNotFound(vip.interface.clone())),
            Err(e) => {
                return Err(match netlink_errno(&e) {
                    Some(libc::ENODEV) => VipError::InterfaceNotFound(vip.interface.clone()),
                    _ => netlink_error("get link", vip, e),
                })
            }
        };
        let mac = if msg.header.link_layer_type == LinkLayerType::Ether {
            msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
                _ => None,
            })
        } else {
            None
        };
        Ok(Link {
            index: msg.header.index,
            mac,
        })
    }

    /// `RTM_NEWADDR` with replace, lifetime and marks.
    async fn add(&self, vip: &VipSpec, link: &Link) -> Result<(), VipError> {
        let secs = vip.lifetime_secs()?;
        let mut req = self
            .handle
            .address()
            .add(link.index, vip.address, vip.prefix)
            .replace();
        let msg = req.message_mut();
        let mut cache = CacheInfo::default();
        cache.ifa_valid = secs;
        cache.ifa_preferred = secs;
        msg.attributes.push(AddressAttribute::CacheInfo(cache));
        msg.attributes.push(watch::protocol_attribute());
        match vip.address {
            IpAddr::V4(_) => msg.attributes.push(AddressAttribute::Label(vip.label())),
            IpAddr::V6(_) => {
                msg.header.flags |= AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        req.execute()
            .await
            .map_err(|e| netlink_error("add address", vip, e))
    }

    /// Send the first announcement now and schedule the rest.
    fn announce(&self, vip: &VipSpec, link: &Link) -> Result<(), VipError> {
        let key = (vip.interface.clone(), vip.address);
        self.bursts.stop(&key);
        if vip.announce_count == 0 {
            return Ok(());
        }
        let Some(mac) = link.mac else {
            tracing::warn!(vip = %vip, "interface is not Ethernet: VIP held but not announced");
            return Ok(());
        };
        let announcer = match &self.announcer {
            Ok(a) => Arc::clone(a),
            Err(errno) => {
                return Err(announce_error(
                    vip,
                    std::io::Error::from_raw_os_error(*errno),
                ))
            }
        };
        let announcement = Announcement {
            ifindex: link.index,
            mac,
            address: vip.address,
            router: vip.address.is_ipv6() && ipv6_forwarding(&vip.interface),
        };
        announcer
            .send(&announcement)
            .map_err(|e| announce_error(vip, e))?;
        tracing::debug!(vip = %vip, n = 1, of = vip.announce_count, "announced");
        if vip.announce_count == 1 {
            return Ok(());
        }
        let (count, interval, name) = (vip.announce_count, vip.announce_interval, vip.to_string());
        let bursts = self.bursts.clone();
        let runtime = &self.runtime;
        self.bursts.start(key.clone(), |id| {
            runtime
                .spawn(async move {
                    let mut tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.tick().await; // the immediate first tick: already sent
                    for n in 2..=count {
                        tick.tick().await;
                        match announcer.send(&announcement) {
                            Ok(()) => tracing::debug!(vip = %name, n, of = count, "announced"),
                            Err(e) => {
                                tracing::warn!(vip = %name, n, error = %e, "announcement failed")
                            }
                        }
                    }
                    bursts.finished(&key, id);
                })
                .abort_handle()
        });
        Ok(())
    }
}

impl Drop for VipManager {
    fn drop(&mut self) {
        self.bursts.stop_all();
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn family(a: IpAddr) -> AddressFamily {
    match a {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A bare address message (index, address, prefix) for deletion.
fn address_message(index: u32, address: IpAddr, prefix: u8) -> AddressMessage {
    match address {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a, prefix)
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(a, prefix)
            .build(),
    }
}

/// Whether IPv6 forwarding is on for `ifname` (then NAs carry the router
/// flag, as keepalived does). Read in the calling thread's namespace.
fn ipv6_forwarding(ifname: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{ifname}/forwarding"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

fn not_held(vip: &VipSpec) -> VipError {
    VipError::NotHeld {
        address: vip.address,
        interface: vip.interface.clone(),
    }
}

fn netlink_error(op: &'static str, vip: &VipSpec, source: rtnetlink::Error) -> VipError {
    match netlink_errno(&source) {
        Some(e) if is_permission(e) => VipError::PermissionDenied {
            op,
            address: vip.address,
            interface: vip.interface.clone(),
            capability: "CAP_NET_ADMIN",
        },
        _ => VipError::Netlink {
            op,
            address: vip.address,
            interface: vip.interface.clone(),
            source: Box::new(source),
        },
    }
}

fn announce_error(vip: &VipSpec, source: std::io::Error) -> VipError {
    match source.raw_os_error() {
        Some(e) if is_permission(e) => VipError::PermissionDenied {
            op: "announce",
            address: vip.address,
            interface: vip.interface.clone(),
            capability: "CAP_NET_RAW",
        },
        _ => VipError::Announce {
            address: vip.address,
            interface: vip.interface.clone(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}

    /// The agent shares one manager between tasks of a multi-threaded
    /// runtime: the manager and its futures must be Send (+ Sync).
    #[test]
    fn manager_and_futures_are_send() {
        send_sync::<VipManager>();
        #[allow(dead_code)]
        fn futures(m: &VipManager, v: &VipSpec) {
            send(&m.acquire(v));
            send(&m.renew(v));
            send(&m.release(v));
            send(&m.held(v));
            send(&m.owned());
        }
        let w: Option<VipWatch> = None;
        send(&w);
    }

    #[test]
    fn new_outside_a_runtime_is_an_error() {
        assert!(matches!(VipManager::new(), Err(VipError::NoRuntime)));
    }
}
