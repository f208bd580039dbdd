//! Prefix-preserving address anonymisation: Crypto-PAn as Xu, Fan, Ammar and Moon published it in
//! 2002 (the reference `panonymizer.cpp`, Crypto-PAn 1.0), whose sample trace most ports
//! reproduce; not the 2005 variant (which rotates the pad) nor nfdump's IPv6 code. The vectors
//! and their sources are in `docs/research/crypto-pan.md`.
//!
//! Two addresses that share their first k bits share the first k bits of their anonymised forms,
//! and nothing more: output bit i is input bit i XORed with the top bit of AES of the first i
//! input bits followed by the pad's remaining bits. IPv6 addresses run the same construction
//! over 128 bits; an IPv4 address is its top 32 steps (so its results equal the 32-bit
//! algorithm's).

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A keyed anonymiser: AES-128 with the key's first half, and the pad (AES of the second half).
#[derive(Clone)]
pub struct CryptoPan {
    cipher: Aes128,
    pad: u128,
}

impl std::fmt::Debug for CryptoPan {
    /// The key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CryptoPan(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a Crypto-PAn key is 32 bytes as 64 hex digits; got {0} characters")]
    Length(usize),
    #[error("a Crypto-PAn key is hex digits only")]
    NotHex,
}

impl CryptoPan {
    pub fn new(key: &[u8; 32]) -> CryptoPan {
        let mut first = [0u8; 16];
        first.copy_from_slice(&key[..16]);
        let cipher = Aes128::new(&Array::from(first));
        let mut pad = [0u8; 16];
        pad.copy_from_slice(&key[16..]);
        let mut block = Array::from(pad);
        cipher.encrypt_block(&mut block);
        let pad = u128::from_be_bytes(block.into());
        CryptoPan { cipher, pad }
    }

    /// From 64 hex digits (the `key` of a stream's configuration).
    pub fn from_hex(hex: &str) -> Result<CryptoPan, KeyError> {
        let hex = hex.trim();
        if hex.len() != 64 {
            return Err(KeyError::Length(hex.len()));
        }
        // `from_str_radix` alone would take a sign (`+f`).
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::NotHex);
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or(KeyError::NotHex)?, 16)
                .map_err(|_| KeyError::NotHex)?;
        }
        Ok(CryptoPan::new(&key))
    }

    /// The first `bits` bits of `addr` (left-aligned in a u128), anonymised.
    fn anonymise_bits(&self, addr: u128, bits: u32) -> u128 {
        let mut flips: u128 = 0;
        for pos in 0..bits {
            // The address's first `pos` bits, then the pad's.
            let keep = if pos == 0 {
                0
            } else {
                u128::MAX << (128 - pos)
            };
            let word = (addr & keep) | (self.pad & !keep);
            let mut block = Array::from(word.to_be_bytes());
            self.cipher.encrypt_block(&mut block);
            flips |= u128::from(block[0] >> 7) << (127 - pos);
        }
        addr ^ flips
    }

    pub fn ipv4(&self, a: Ipv4Addr) -> Ipv4Addr {
        let out = self.anonymise_bits(u128::from(u32::from(a)) << 96, 32);
        Ipv4Addr::from((out >> 96) as u32)
    }

    /// All 128 bits, IPv4-mapped addresses (`::ffff:a.b.c.d`) included: they are IPv6 addresses
    /// on the wire (as yacryptopan and the .NET port do; the Go port treats them as IPv4).
    pub fn ipv6(&self, a: Ipv6Addr) -> Ipv6Addr {
        Ipv6Addr::from(self.anonymise_bits(u128::from(a), 128))
    }

    pub fn ip(&self, a: IpAddr) -> IpAddr {
        match a {
            IpAddr::V4(v4) => IpAddr::V4(self.ipv4(v4)),
            IpAddr::V6(v6) => IpAddr::V6(self.ipv6(v6)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The key of the reference implementation's `sample.cpp`.
    const SAMPLE_KEY: [u8; 32] = [
        21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16, 216, 152, 143, 131,
        121, 121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2,
    ];

    /// The 70 distinct pairs of the 2002 sample trace (`sample_trace_raw.dat` ->
    /// `sample_trace_sanitized.dat`), as Yawning/cryptopan's `cryptopan_test.go` (BSD-2) lists
    /// them; yacryptopan checks the same against the files (docs/research/crypto-pan.md).
    const SAMPLE_TRACE: &str = "128.11.68.132 135.242.180.132
129.118.74.4 134.136.186.123
130.132.252.244 133.68.164.234
141.223.7.43 141.167.8.160
141.233.145.108 141.129.237.235
152.163.225.39 151.140.114.167
156.29.3.236 147.225.12.42
165.247.96.84 162.9.99.234
166.107.77.190 160.132.178.185
192.102.249.13 252.138.62.131
192.215.32.125 252.43.47.189
192.233.80.103 252.25.108.8
192.41.57.43 252.222.221.184
193.150.244.223 253.169.52.216
195.205.63.100 255.186.223.5
198.200.171.101 249.199.68.213
198.26.132.101 249.36.123.202
198.36.213.5 249.7.21.132
198.51.77.238 249.18.186.254
199.217.79.101 248.38.184.213
202.49.198.20 245.206.7.234
203.12.160.252 244.248.163.4
204.184.162.189 243.192.77.90
204.202.136.230 243.178.4.198
204.29.20.4 243.33.20.123
205.178.38.67 242.108.198.51
205.188.147.153 242.96.16.101
205.188.248.25 242.96.88.27
205.245.121.43 242.21.121.163
207.105.49.5 241.118.205.138
207.135.65.238 241.202.129.222
207.155.9.214 241.220.250.22
207.188.7.45 241.255.249.220
207.25.71.27 241.33.119.156
207.33.151.131 241.1.233.131
208.147.89.59 227.237.98.191
208.234.120.210 227.154.67.17
208.28.185.184 227.39.94.90
208.52.56.122 227.8.63.165
209.12.231.7 226.243.167.8
209.238.72.3 226.6.119.243
209.246.74.109 226.22.124.76
209.68.60.238 226.184.220.233
209.85.249.6 226.170.70.6
212.120.124.31 228.135.163.231
212.146.8.236 228.19.4.234
212.186.227.154 228.59.98.98
212.204.172.118 228.71.195.169
212.206.130.201 228.69.242.193
216.148.237.145 235.84.194.111
216.157.30.252 235.89.31.26
216.184.159.48 235.96.225.78
216.227.10.221 235.28.253.36
216.254.18.172 235.7.16.162
216.32.132.250 235.192.139.38
216.35.217.178 235.195.157.81
24.0.250.221 100.15.198.226
24.13.62.231 100.2.192.247
24.14.213.138 100.1.42.141
24.5.0.80 100.9.15.210
24.7.198.88 100.10.6.25
24.94.26.44 100.88.228.35
38.15.67.68 64.3.66.187
4.3.88.225 124.60.155.63
63.14.55.111 95.9.215.7
63.195.241.44 95.179.238.44
63.97.7.140 95.97.9.123
64.14.118.196 0.255.183.58
64.34.154.117 0.221.154.117
64.39.15.238 0.219.7.41";

    #[test]
    fn the_2002_sample_trace_is_reproduced() {
        let pan = CryptoPan::new(&SAMPLE_KEY);
        let mut n = 0;
        for line in SAMPLE_TRACE.lines() {
            let (raw, sanitised) = line.split_once(' ').expect("a pair");
            let raw: Ipv4Addr = raw.parse().expect("raw");
            let sanitised: Ipv4Addr = sanitised.parse().expect("sanitised");
            assert_eq!(pan.ipv4(raw), sanitised, "{raw}");
            n += 1;
        }
        assert_eq!(n, 70);
        // Edge cases from the Perl port's tests, same key.
        for (raw, out) in [
            ("0.0.0.0", "120.255.240.1"),
            ("255.255.255.255", "206.120.97.255"),
            ("127.0.0.1", "33.0.243.129"),
        ] {
            assert_eq!(
                pan.ipv4(raw.parse().expect("raw")),
                out.parse::<Ipv4Addr>().expect("out")
            );
        }
    }

    #[test]
    fn ipv6_runs_the_same_construction_over_128_bits() {
        let pan = CryptoPan::new(&SAMPLE_KEY);
        // Yawning/cryptopan's, the .NET and the node ports' tests, same key.
        for (raw, out) in [
            ("::1", "78ff:f001:9fc0:20df:8380:b1f1:704:ed"),
            ("::2", "78ff:f001:9fc0:20df:8380:b1f1:704:ef"),
            ("::ffff", "78ff:f001:9fc0:20df:8380:b1f1:704:f838"),
            ("2001:db8::1", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1e"),
            ("2001:db8::2", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1c"),
        ] {
            assert_eq!(
                pan.ipv6(raw.parse().expect("raw")),
                out.parse::<Ipv6Addr>().expect("out")
            );
        }
    }

    #[test]
    fn another_key_and_the_hex_form() {
        let key: Vec<String> = (0u8..32).map(|b| format!("{b:02x}")).collect();
        let pan = CryptoPan::from_hex(&key.concat()).expect("key");
        assert_eq!(
            pan.ipv4(Ipv4Addr::new(192, 0, 2, 1)),
            Ipv4Addr::new(2, 90, 93, 17)
        );
        assert_eq!(
            pan.ipv6("2001:db8::1".parse().expect("v6")),
            "dd92:2c44:3fc0:ff1e:7ff9:c7f0:8180:7e00"
                .parse::<Ipv6Addr>()
                .expect("out")
        );
        assert_eq!(CryptoPan::from_hex("abc").err(), Some(KeyError::Length(3)));
        assert_eq!(
            CryptoPan::from_hex(&"zz".repeat(32)).err(),
            Some(KeyError::NotHex)
        );
        assert_eq!(
            CryptoPan::from_hex(&"+f".repeat(32)).err(),
            Some(KeyError::NotHex)
        );
        assert_eq!(format!("{pan:?}"), "CryptoPan(..)");
    }

    proptest! {
        #[test]
        fn prefixes_are_kept_and_nothing_more(a in any::<u32>(), b in any::<u32>()) {
            let pan = CryptoPan::new(&SAMPLE_KEY);
            let (x, y) = (pan.ipv4(a.into()), pan.ipv4(b.into()));
            let shared = (a ^ b).leading_zeros();
            prop_assert_eq!((u32::from(x) ^ u32::from(y)).leading_zeros(), shared);
        }
    }
}
