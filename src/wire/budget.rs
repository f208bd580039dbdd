//! Byte budgets for what input makes a decoder keep (compiled templates). Counting templates
//! is no bound at all: one template may carry 16,000 fields. A budget is counted in bytes and
//! may have a parent (session -> exporter -> collector), so one charge is checked against every
//! level at once and a hostile exporter exhausts its own budget, not the process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct ByteBudget {
    /// Which bound this is, for the refusal message ("session", "exporter", "collector").
    name: &'static str,
    limit: usize,
    used: AtomicUsize,
    parent: Option<Arc<ByteBudget>>,
}

/// A charge was refused: the named budget is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the {name}'s template budget of {limit} bytes is used up ({used} in use, {asked} asked)")]
pub struct OverBudget {
    pub name: &'static str,
    pub limit: usize,
    pub used: usize,
    pub asked: usize,
}

impl ByteBudget {
    pub fn new(name: &'static str, limit: usize, parent: Option<Arc<ByteBudget>>) -> ByteBudget {
        ByteBudget {
            name,
            limit,
            used: AtomicUsize::new(0),
            parent,
        }
    }

    /// Takes `n` bytes from this budget and every parent, or from none of them. A compare-and-swap
    /// loop: a charge that does not fit never shows in the counter, so it cannot make a
    /// concurrent one that does fit fail.
    pub fn try_take(&self, n: usize) -> Result<(), OverBudget> {
        let taken = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            });
        if let Err(used) = taken {
            return Err(OverBudget {
                name: self.name,
                limit: self.limit,
                used,
                asked: n,
            });
        }
        if let Some(p) = &self.parent
            && let Err(e) = p.try_take(n)
        {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    /// Counts `n` bytes held already, here and in every parent, past the limit if need be.
    pub fn take_anyway(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
        if let Some(p) = &self.parent {
            p.take_anyway(n);
        }
    }

    /// Gives back `n` bytes taken earlier, here and in every parent. Never more than this budget
    /// holds: a double give-back (two parties racing to free one thing) must not free a sibling's
    /// bytes in the parent.
    pub fn give_back(&self, n: usize) {
        let before = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            })
            .unwrap_or(0);
        let freed = n.min(before);
        if let Some(p) = &self.parent
            && freed > 0
        {
            p.give_back(freed);
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_is_taken_everywhere_or_nowhere() {
        let total = Arc::new(ByteBudget::new("collector", 100, None));
        let exporter = Arc::new(ByteBudget::new("exporter", 60, Some(total.clone())));
        let a = ByteBudget::new("session", 50, Some(exporter.clone()));
        let b = ByteBudget::new("session", 50, Some(exporter.clone()));
        a.try_take(40).expect("fits everywhere");
        let e = b
            .try_take(30)
            .expect_err("the exporter's 60 would be passed");
        assert_eq!(e.name, "exporter");
        assert_eq!((b.used(), exporter.used(), total.used()), (0, 40, 40));
        let e = a.try_take(11).expect_err("the session's own 50");
        assert_eq!(e.name, "session");
        a.give_back(40);
        assert_eq!((a.used(), exporter.used(), total.used()), (0, 0, 0));
        a.give_back(1);
        assert_eq!(total.used(), 0, "never below zero");
        // A give-back beyond what a child holds frees nothing of its siblings'.
        b.try_take(10).expect("b");
        a.try_take(5).expect("a");
        a.give_back(50);
        assert_eq!((exporter.used(), total.used()), (10, 10));
    }
}
