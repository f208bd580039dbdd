//! A pcap or pcapng capture: every frame sliced to its transport payload, UDP datagrams split and
//! TCP streams reassembled and framed by MessageFinder, every message found decoded with one
//! Decoder per (source, destination) as `dump` does.
#![no_main]

use ipfixsvc::meter::capture::CaptureReader;
use ipfixsvc::meter::messages::{Found, MessageFinder};
use ipfixsvc::wire::{Decoder, DecoderOptions, Registry};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::io::BufReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = CaptureReader::new(BufReader::new(data)) else {
        return;
    };
    let registry = Registry::builtin();
    let mut finder = MessageFinder::new(vec![4739, 2055, 9995, 9996], 65535);
    let mut decoders = HashMap::new();
    let mut found = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let Ok(packet) = packet else { break };
        found.clear();
        finder.feed(&packet, &mut found);
        for f in found.drain(..) {
            if let Found::Message(m) = f {
                let decoder = decoders.entry((m.src, m.dst)).or_insert_with(|| {
                    Decoder::new(registry.clone(), DecoderOptions::default())
                });
                let _ = decoder.decode(m.bytes);
            }
        }
    }
});
