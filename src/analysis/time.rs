//! A flow record's start and end, in Unix milliseconds, from whichever time elements its
//! template has: absolute times (flowStart/EndSeconds, -Milliseconds, -Microseconds,
//! -Nanoseconds), system-uptime times (flowStart/EndSysUpTime, placed with the record's
//! systemInitTimeMilliseconds, an options record's, or NetFlow v9's header uptime and export
//! time), or times before the export (flowStart/EndDeltaMicroseconds).

use crate::wire::batch::{Batch, Column};
use crate::wire::header::MessageHeader;
use crate::wire::ndjson::ntp_to_unix;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTimes {
    pub start: i64,
    pub end: i64,
    /// Placed by the export time: system-uptime times with no system init time anywhere (an
    /// IPFIX exporter that sends no systemInitTimeMilliseconds). The flow is taken to end at
    /// the export, with its duration as its uptimes say.
    pub approximate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Absolute,
    SysUpTime,
    DeltaMicros,
}

impl Kind {
    /// Which to prefer when a template has several: absolute times say the most.
    fn rank(self) -> u8 {
        match self {
            Kind::Absolute => 0,
            Kind::SysUpTime => 1,
            Kind::DeltaMicros => 2,
        }
    }
}

/// A template's time fields (field indexes).
#[derive(Debug, Clone, Default)]
pub struct TimeFields {
    start: Option<(usize, Kind)>,
    end: Option<(usize, Kind)>,
    init: Option<usize>,
    duration_ms: Option<usize>,
}

impl TimeFields {
    /// Notes field `f` with element `id` if it is a time.
    pub fn note(&mut self, id: (u32, u16), f: usize) {
        let (slot, kind) = match id {
            (0, 150 | 152 | 154 | 156) => (&mut self.start, Kind::Absolute),
            (0, 151 | 153 | 155 | 157) => (&mut self.end, Kind::Absolute),
            (0, 22) => (&mut self.start, Kind::SysUpTime),
            (0, 21) => (&mut self.end, Kind::SysUpTime),
            (0, 158) => (&mut self.start, Kind::DeltaMicros),
            (0, 159) => (&mut self.end, Kind::DeltaMicros),
            (0, 160) => {
                self.init.get_or_insert(f);
                return;
            }
            (0, 161) => {
                self.duration_ms.get_or_insert(f);
                return;
            }
            _ => return,
        };
        if slot.is_none_or(|(_, k)| kind.rank() < k.rank()) {
            *slot = Some((f, kind));
        }
    }

    /// The batch's time columns (found once per batch, read per record).
    pub fn columns<'b>(&self, b: &'b Batch) -> TimeCols<'b> {
        let col = |slot: Option<(usize, Kind)>| slot.map(|(f, k)| (b.column(f), k));
        TimeCols {
            start: col(self.start),
            end: col(self.end),
            init: self.init.map(|f| b.column(f)),
            duration: self.duration_ms.map(|f| b.column(f)),
        }
    }
}

/// A batch's time columns.
#[derive(Debug, Clone, Copy)]
pub struct TimeCols<'b> {
    start: Option<(Column<'b>, Kind)>,
    end: Option<(Column<'b>, Kind)>,
    init: Option<Column<'b>>,
    duration: Option<Column<'b>>,
}

#[inline]
fn uint(c: Column<'_>, r: usize) -> Option<i64> {
    match c {
        Column::U32(c) => Some(c[r] as i64),
        Column::U64(c) => i64::try_from(c[r]).ok(),
        _ => None,
    }
}

impl TimeCols<'_> {
    /// Record `r`'s start and end; `None` when it has no time that can be placed. `init` is a
    /// systemInitTimeMilliseconds learnt from an options record.
    #[inline]
    pub fn read(&self, r: usize, h: &MessageHeader, init: Option<u64>) -> Option<FlowTimes> {
        let init = self
            .init
            .and_then(|c| match c {
                Column::DateTimeMilliseconds(c) => Some(c[r]),
                _ => None,
            })
            .or(init);
        let at = |slot: Option<(Column<'_>, Kind)>| -> Option<i64> {
            let (c, kind) = slot?;
            time_ms(c, r, kind, h, init)
        };
        let duration = self.duration.and_then(|c| uint(c, r));
        let times = |start, end| FlowTimes {
            start,
            end,
            approximate: false,
        };
        match (at(self.start), at(self.end)) {
            (Some(s), Some(e)) => Some(times(s, e)),
            (Some(s), None) => Some(times(s, s.saturating_add(duration.unwrap_or(0)))),
            (None, Some(e)) => Some(times(e.saturating_sub(duration.unwrap_or(0)), e)),
            (None, None) => self.by_export_time(r, h, init),
        }
    }

    /// Uptime-based times that nothing places: the flow ends at the export time.
    fn by_export_time(&self, r: usize, h: &MessageHeader, init: Option<u64>) -> Option<FlowTimes> {
        if init.is_some() || h.sys_uptime_ms.is_some() {
            return None;
        }
        let uptime = |slot: Option<(Column<'_>, Kind)>| match slot {
            Some((c, Kind::SysUpTime)) => uint(c, r),
            _ => None,
        };
        let (start, end) = (uptime(self.start), uptime(self.end));
        if start.is_none() && end.is_none() {
            return None;
        }
        let export = h.export_time as i64 * 1000;
        let duration = match (start, end) {
            // 32-bit uptimes wrap: the duration is their difference modulo 2^32.
            (Some(s), Some(e)) => i64::from((e as u32).wrapping_sub(s as u32)),
            _ => 0,
        };
        Some(FlowTimes {
            start: export - duration,
            end: export,
            approximate: true,
        })
    }
}

#[inline]
fn time_ms(
    c: Column<'_>,
    r: usize,
    kind: Kind,
    h: &MessageHeader,
    init: Option<u64>,
) -> Option<i64> {
    match kind {
        Kind::Absolute => match c {
            Column::DateTimeSeconds(c) => Some(c[r] as i64 * 1000),
            Column::DateTimeMilliseconds(c) => i64::try_from(c[r]).ok(),
            Column::DateTimeMicroseconds(c) | Column::DateTimeNanoseconds(c) => {
                let (s, n) = ntp_to_unix(c[r]);
                Some(s.saturating_mul(1000) + n as i64 / 1_000_000)
            }
            _ => None,
        },
        Kind::SysUpTime => {
            let v = uint(c, r)?;
            match (init, h.sys_uptime_ms) {
                (Some(init), _) => Some(i64::try_from(init).ok()?.saturating_add(v)),
                // NetFlow v9 (RFC 3954): the header's uptime was at the export time.
                // Both are 32-bit milliseconds that wrap after 49.7 days: the flow's time
                // before the export is their difference modulo 2^32.
                (None, Some(up)) => {
                    Some(h.export_time as i64 * 1000 - i64::from(up.wrapping_sub(v as u32)))
                }
                (None, None) => None,
            }
        }
        Kind::DeltaMicros => Some(h.export_time as i64 * 1000 - uint(c, r)? / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Registry;
    use crate::wire::decoder::{Decoder, DecoderOptions};
    use crate::wire::encode::{FieldValue, MessageBuilder};
    use crate::wire::plan::Plan;
    use crate::wire::template::{FieldSpec, Template};

    /// The export time of every message here (seconds).
    const EXPORT: u32 = 1_700_000_000;
    const EXPORT_MS: i64 = EXPORT as i64 * 1000;

    /// One record with `fields` (element id, length) = `values`, decoded; its times as read.
    fn read(fields: &[(u16, u16)], values: &[FieldValue], init: Option<u64>) -> Option<FlowTimes> {
        let reg = Registry::builtin();
        let mut specs = vec![FieldSpec::new(1, 0, 8)];
        specs.extend(fields.iter().map(|(id, len)| FieldSpec::new(*id, 0, *len)));
        let t = Template::data(300, specs);
        let plan = Plan::compile(t.clone(), &reg);
        let mut mb = MessageBuilder::new(1, 65535);
        mb.set_export_time(EXPORT);
        mb.add_template(&t).expect("template");
        let mut all = vec![FieldValue::Unsigned(100)];
        all.extend(values.iter().cloned());
        mb.add_record(&plan, &all).expect("record");
        mb.flush();
        let mut d = Decoder::new(reg, DecoderOptions::default());
        let m = mb.take_ready().into_iter().next().expect("a message");
        let msg = d.decode(bytes::Bytes::from(m)).expect("decodes");
        let b = &msg.batches[0];
        let mut tf = TimeFields::default();
        for (f, pf) in b.plan.fields.iter().enumerate() {
            tf.note((pf.spec.pen, pf.spec.id), f);
        }
        tf.columns(b).read(0, &msg.header, init)
    }

    fn exact(start: i64, end: i64) -> Option<FlowTimes> {
        Some(FlowTimes {
            start,
            end,
            approximate: false,
        })
    }

    /// An NTP timestamp (RFC 5905) of Unix seconds plus a half second.
    fn ntp_and_a_half(unix: u64) -> u64 {
        ((unix + 2_208_988_800) << 32) | (1 << 31)
    }

    #[test]
    fn absolute_times_of_every_resolution() {
        use FieldValue::*;
        let (s, e) = (1_700_000_010u64, 1_700_000_070u64);
        assert_eq!(
            read(
                &[(150, 4), (151, 4)],
                &[DateTimeSeconds(s as u32), DateTimeSeconds(e as u32)],
                None
            ),
            exact(s as i64 * 1000, e as i64 * 1000)
        );
        assert_eq!(
            read(
                &[(152, 8), (153, 8)],
                &[
                    DateTimeMilliseconds(s * 1000 + 7),
                    DateTimeMilliseconds(e * 1000 + 9)
                ],
                None
            ),
            exact(s as i64 * 1000 + 7, e as i64 * 1000 + 9)
        );
        for (a, b) in [(154, 155), (156, 157)] {
            assert_eq!(
                read(
                    &[(a, 8), (b, 8)],
                    &[
                        DateTimeNtp(ntp_and_a_half(s)),
                        DateTimeNtp(ntp_and_a_half(e))
                    ],
                    None
                ),
                exact(s as i64 * 1000 + 500, e as i64 * 1000 + 500),
                "elements {a}/{b}"
            );
        }
    }

    #[test]
    fn uptimes_with_the_records_or_an_options_records_init_time() {
        use FieldValue::*;
        let init = 1_699_999_000_000u64;
        let up = [(22, 4), (21, 4)];
        let with_init = [(22, 4), (21, 4), (160, 8)];
        assert_eq!(
            read(
                &with_init,
                &[
                    Unsigned(10_000),
                    Unsigned(20_000),
                    DateTimeMilliseconds(init)
                ],
                None
            ),
            exact(init as i64 + 10_000, init as i64 + 20_000)
        );
        // An options record's init time (what the series builder learnt) places them the same.
        assert_eq!(
            read(&up, &[Unsigned(10_000), Unsigned(20_000)], Some(init)),
            exact(init as i64 + 10_000, init as i64 + 20_000)
        );
        // The record's own init time wins over an options record's.
        assert_eq!(
            read(
                &with_init,
                &[Unsigned(0), Unsigned(1), DateTimeMilliseconds(init)],
                Some(5)
            ),
            exact(init as i64, init as i64 + 1)
        );
        // None anywhere: the flow ends at the export, as long as its uptimes say.
        assert_eq!(
            read(&up, &[Unsigned(10_000), Unsigned(25_000)], None),
            Some(FlowTimes {
                start: EXPORT_MS - 15_000,
                end: EXPORT_MS,
                approximate: true
            })
        );
        // Uptimes that wrapped between start and end: the difference modulo 2^32.
        assert_eq!(
            read(
                &up,
                &[Unsigned(u32::MAX as u64 - 999), Unsigned(1_000)],
                None
            ),
            Some(FlowTimes {
                start: EXPORT_MS - 2_000,
                end: EXPORT_MS,
                approximate: true
            })
        );
    }

    #[test]
    fn delta_times_count_back_from_the_export() {
        use FieldValue::*;
        assert_eq!(
            read(
                &[(158, 4), (159, 4)],
                &[Unsigned(5_000_000), Unsigned(1_000_000)],
                None
            ),
            exact(EXPORT_MS - 5_000, EXPORT_MS - 1_000)
        );
    }

    #[test]
    fn a_duration_stands_in_for_a_missing_end_or_start() {
        use FieldValue::*;
        let s = 1_700_000_000_000u64;
        assert_eq!(
            read(
                &[(152, 8), (161, 4)],
                &[DateTimeMilliseconds(s), Unsigned(3_000)],
                None
            ),
            exact(s as i64, s as i64 + 3_000)
        );
        assert_eq!(
            read(
                &[(153, 8), (161, 4)],
                &[DateTimeMilliseconds(s), Unsigned(3_000)],
                None
            ),
            exact(s as i64 - 3_000, s as i64)
        );
        // One time and no duration: an instant.
        assert_eq!(
            read(&[(153, 8)], &[DateTimeMilliseconds(s)], None),
            exact(s as i64, s as i64)
        );
    }

    #[test]
    fn absolute_times_win_and_no_time_is_none() {
        use FieldValue::*;
        let s = 1_700_000_000_000u64;
        // Uptimes listed first, absolute times after: the absolute ones are read.
        assert_eq!(
            read(
                &[(22, 4), (21, 4), (152, 8), (153, 8)],
                &[
                    Unsigned(1),
                    Unsigned(2),
                    DateTimeMilliseconds(s),
                    DateTimeMilliseconds(s + 60_000)
                ],
                Some(0)
            ),
            exact(s as i64, s as i64 + 60_000)
        );
        assert_eq!(read(&[(7, 2)], &[Unsigned(443)], None), None);
        // A duration alone places nothing.
        assert_eq!(read(&[(161, 4)], &[Unsigned(3_000)], None), None);
    }
}
