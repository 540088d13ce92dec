//! The session's two sides: the client's connection (Envoy's, or a test's)
//! and where its requests go (the worker's upstream loop, or a model).

use crate::upstream::{Request, WorkerIo};

/// What a session needs from the downstream connection.
pub trait Downstream {
    fn write(&mut self, data: &[u8]);
    /// Close, flushing pending writes first when `flush`.
    fn close(&mut self, flush: bool);
    fn read_disable(&mut self, disable: bool);
    /// Have the session run again ([`super::Session::on_resume`]) from the
    /// next turn of the event loop, after the output written in this turn
    /// went to the sockets; false when that cannot be arranged.
    fn resume_later(&mut self) -> bool {
        false
    }
    /// Lower the connection's output buffer watermark to at most `bytes`
    /// (the watermark events then come at that size).
    fn limit_output(&mut self, _bytes: u32) {}
    /// Record a histogram value (Envoy requires its worker thread).
    fn record_histogram(&mut self, _id: usize, _value: u64) {}
}

/// Where a session's requests go: its worker's upstream loop in Envoy, a
/// model of one in tests and fuzzing.
///
/// The contract a session relies on: every request that is not a mirrored
/// copy gets exactly one reply, delivered to its client's mailbox, by its
/// deadline (the loop answers a timeout error then).
pub trait Upstream {
    /// Take every request of `batch`, leaving it empty.
    fn submit(&self, batch: &mut Vec<Request>);
    /// A node's `-BUSY` reply while one is busy with a long script.
    fn busy_reply(&self) -> Option<Vec<u8>> {
        None
    }
    /// Look at the clients again now (one left while blocked).
    fn wake(&self) {}
}

impl Upstream for WorkerIo {
    fn submit(&self, batch: &mut Vec<Request>) {
        WorkerIo::submit(self, batch)
    }
    fn busy_reply(&self) -> Option<Vec<u8>> {
        WorkerIo::busy_reply(self)
    }
    fn wake(&self) {
        WorkerIo::wake(self)
    }
}
