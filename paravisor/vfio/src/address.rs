//! [`PciAddress`]: a PCI function's name as Linux writes it,
//! `DDDD:BB:DD.F`, checked before it becomes part of a sysfs path.

use std::fmt;

/// A PCI function address: domain, bus, device (0..32), function (0..8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciAddress {
    /// PCI segment (domain).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (below 32).
    pub device: u8,
    /// Function number (below 8).
    pub function: u8,
}

impl PciAddress {
    /// Parses `DDDD:BB:DD.F` (hex, as in `/sys/bus/pci/devices`); the
    /// domain may be left out (`BB:DD.F` means domain 0).
    ///
    /// # Errors
    /// A message saying what is wrong with `s`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`{s}` is not a PCI address (DDDD:BB:DD.F, hex): {why}");
        let (rest, function) = s.rsplit_once('.').ok_or_else(|| bad("no `.F`"))?;
        let mut parts = rest.split(':').collect::<Vec<_>>();
        if parts.len() == 2 {
            parts.insert(0, "0000");
        }
        let [domain, bus, device] = parts[..] else {
            return Err(bad("expected DDDD:BB:DD"));
        };
        let hex = |field: &str, digits: usize, what: &str| -> Result<u32, String> {
            if field.is_empty()
                || field.len() > digits
                || !field.chars().all(|c| c.is_ascii_hexdigit())
            {
                return Err(bad(&format!(
                    "the {what} `{field}` is not up to {digits} hex digits"
                )));
            }
            u32::from_str_radix(field, 16).map_err(|e| bad(&e.to_string()))
        };
        let domain = hex(domain, 4, "domain")?;
        let bus = hex(bus, 2, "bus")?;
        let device = hex(device, 2, "device")?;
        let function = hex(function, 1, "function")?;
        if device >= 32 {
            return Err(bad("the device number is 32 or more"));
        }
        if function >= 8 {
            return Err(bad("the function number is 8 or more"));
        }
        Ok(Self {
            domain: domain as u16,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_names_round_trip() {
        let a = PciAddress::parse("0000:00:04.0").unwrap();
        assert_eq!((a.domain, a.bus, a.device, a.function), (0, 0, 4, 0));
        assert_eq!(a.to_string(), "0000:00:04.0");
        let b = PciAddress::parse("0001:3A:1f.7").unwrap();
        assert_eq!(b.to_string(), "0001:3a:1f.7");
        assert_eq!(
            PciAddress::parse("00:03.0").unwrap().to_string(),
            "0000:00:03.0"
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (s, why) in [
            ("0000:00:04", "no `.F`"),
            ("../../x:00:04.0", "domain"),
            ("0000:00:20.0", "32 or more"),
            ("0000:00:04.8", "8 or more"),
            ("0000:100:04.0", "bus"),
            ("0000:00:04.0.1", "device"),
            ("0:0:0:0.0", "DDDD:BB:DD"),
            ("", "no `.F`"),
        ] {
            let err = PciAddress::parse(s).unwrap_err();
            assert!(err.contains(why), "{s}: {err}");
        }
    }
}
