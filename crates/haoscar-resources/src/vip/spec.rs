//! What a VIP is to the mechanism ([`VipSpec`]): address, prefix,
//! interface, announcement plan and kernel lifetime; its construction from
//! the configuration's `VipResource`, its validation, and the derived
//! values put on the wire (the `IFA_LABEL`, lifetime in whole seconds).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use haoscar_types::config::VipResource;

use super::error::VipError;

/// Kernel limit on interface names and address labels (IFNAMSIZ - 1).
pub const MAX_LABEL_LEN: usize = 15;

/// Suffix of the `IFA_LABEL` marking an IPv4 address as HA-OSCAR's.
pub const LABEL_SUFFIX: &str = ":ha";

/// The `IFA_PROTO` value HA-OSCAR puts on every address it adds (IPv4 and
/// IPv6). IPv6 has no labels, so this is the ownership marker that works
/// for both families; `ip addr` from iproute2 >= 6.3 prints it as
/// `proto 104`. (0..=3 are the kernel's own; 104 is `'h'`.)
pub const ADDRESS_PROTOCOL: u8 = 104;

/// Lifetimes are whole seconds in the kernel; `u32::MAX` means forever.
const MAX_LIFETIME_SECS: u64 = u32::MAX as u64 - 1;

/// One virtual IP as the mechanism sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    pub address: IpAddr,
    pub prefix: u8,
    pub interface: String,
    /// Gratuitous ARP / unsolicited NA packets sent by `acquire`
    /// (0 = none).
    pub announce_count: u32,
    /// Spacing of those packets; the first goes out at once.
    pub announce_interval: Duration,
    /// Kernel valid and preferred lifetime of the address (rounded up to
    /// whole seconds, at least 1 s). If it is not renewed within this time
    /// the kernel deletes the address by itself.
    pub lifetime: Duration,
}

impl VipSpec {
    /// The spec of a configured VIP resource, held with `lifetime`.
    pub fn from_resource(resource: &VipResource, lifetime: Duration) -> Self {
        VipSpec {
            address: resource.address.0,
            prefix: resource.address.1,
            interface: resource.interface.clone(),
            announce_count: resource.announce_count,
            announce_interval: resource.announce_interval,
            lifetime,
        }
    }

    /// The `IFA_LABEL` of this VIP: `<interface>:ha`, cut to 15 bytes (the
    /// kernel requires labels to start with the interface name and to fit
    /// in IFNAMSIZ). For interface names longer than 12 bytes the suffix is
    /// cut short; ownership is then recognised by [`ADDRESS_PROTOCOL`].
    /// Labels exist for IPv4 only; the kernel ignores them for IPv6.
    pub fn label(&self) -> String {
        label_for(&self.interface)
    }

    /// The lifetime in whole seconds as given to the kernel.
    pub fn lifetime_secs(&self) -> Result<u32, VipError> {
        let l = self.lifetime;
        let secs = l.as_secs().saturating_add(u64::from(l.subsec_nanos() > 0));
        if secs == 0 {
            return Err(self.invalid("lifetime must be at least 1 s"));
        }
        if secs > MAX_LIFETIME_SECS {
            return Err(self.invalid("lifetime too long (must be finite)"));
        }
        u32::try_from(secs).map_err(|_| self.invalid("lifetime too long"))
    }

    /// Check everything that can be checked without the kernel.
    pub fn validate(&self) -> Result<(), VipError> {
        let max = if self.address.is_ipv4() { 32 } else { 128 };
        if self.prefix > max {
            return Err(self.invalid(format!("prefix longer than {max}")));
        }
        if self.address.is_unspecified() || self.address.is_multicast() {
            return Err(self.invalid("not a unicast address"));
        }
        if self.address.is_loopback() {
            return Err(self.invalid("loopback address"));
        }
        let name = &self.interface;
        if name.is_empty()
            || name.len() > MAX_LABEL_LEN
            || name == "."
            || name == ".."
            || name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
        {
            return Err(self.invalid("not a valid interface name"));
        }
        self.lifetime_secs()?;
        Ok(())
    }

    fn invalid(&self, reason: impl Into<String>) -> VipError {
        VipError::InvalidSpec {
            address: self.address,
            prefix: self.prefix,
            interface: self.interface.clone(),
            reason: reason.into(),
        }
    }
}

impl From<(&VipResource, Duration)> for VipSpec {
    fn from((resource, lifetime): (&VipResource, Duration)) -> Self {
        VipSpec::from_resource(resource, lifetime)
    }
}

impl fmt::Display for VipSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} on {}", self.address, self.prefix, self.interface)
    }
}

/// `<ifname>:ha` cut to [`MAX_LABEL_LEN`] bytes on a character boundary.
pub fn label_for(interface: &str) -> String {
    let mut label = format!("{interface}{LABEL_SUFFIX}");
    let mut end = label.len().min(MAX_LABEL_LEN);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label.truncate(end);
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str, prefix: u8, ifname: &str, lifetime: Duration) -> VipSpec {
        VipSpec {
            address: addr.parse().expect("test address"),
            prefix,
            interface: ifname.into(),
            announce_count: 3,
            announce_interval: Duration::from_millis(200),
            lifetime,
        }
    }

    #[test]
    fn labels() {
        assert_eq!(label_for("eth0"), "eth0:ha");
        assert_eq!(label_for("enp129s0f1"), "enp129s0f1:ha");
        assert_eq!(label_for("enp129s0f1np"), "enp129s0f1np:ha");
        assert_eq!(label_for("enp129s0f1np1"), "enp129s0f1np1:h");
        assert_eq!(label_for("abcdefghijklmno"), "abcdefghijklmno");
        assert!(label_for("ééééééé").len() <= MAX_LABEL_LEN);
    }

    #[test]
    fn lifetime_rounds_up() {
        let s = |d| spec("10.0.0.1", 24, "eth0", d).lifetime_secs().ok();
        assert_eq!(s(Duration::from_secs(2)), Some(2));
        assert_eq!(s(Duration::from_millis(1500)), Some(2));
        assert_eq!(s(Duration::from_millis(1)), Some(1));
        assert_eq!(s(Duration::ZERO), None);
        assert_eq!(s(Duration::MAX), None);
    }

    #[test]
    fn validation() {
        let ok = spec("10.0.0.1", 24, "eth0", Duration::from_secs(2));
        assert!(ok.validate().is_ok());
        assert!(spec("fd00::1", 64, "eth0", Duration::from_secs(2))
            .validate()
            .is_ok());
        for bad in [
            spec("10.0.0.1", 33, "eth0", Duration::from_secs(2)),
            spec("fd00::1", 129, "eth0", Duration::from_secs(2)),
            spec("0.0.0.0", 24, "eth0", Duration::from_secs(2)),
            spec("224.0.0.1", 24, "eth0", Duration::from_secs(2)),
            spec("127.0.0.2", 8, "eth0", Duration::from_secs(2)),
            spec("10.0.0.1", 24, "", Duration::from_secs(2)),
            spec("10.0.0.1", 24, "eth0:1", Duration::from_secs(2)),
            spec("10.0.0.1", 24, "a-very-long-ifname", Duration::from_secs(2)),
            spec("10.0.0.1", 24, "eth0", Duration::ZERO),
        ] {
            let err = bad.validate().expect_err("must be rejected");
            assert!(err.to_string().contains(&bad.interface), "{err}");
        }
    }

    #[test]
    fn from_config_resource() {
        let res = VipResource {
            address: ("10.1.0.100".parse().expect("addr"), 16),
            interface: "eth1".into(),
            announce_count: 5,
            announce_interval: Duration::from_millis(200),
        };
        let s = VipSpec::from((&res, Duration::from_secs(2)));
        assert_eq!(s.to_string(), "10.1.0.100/16 on eth1");
        assert_eq!(s.announce_count, 5);
        assert_eq!(s.lifetime, Duration::from_secs(2));
        assert_eq!(s.label(), "eth1:ha");
    }
}
