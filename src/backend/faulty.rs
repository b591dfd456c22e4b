//! `FaultyStore`: an ObjectStore wrapper that fails writes on purpose, for crash tests.
//!
//! It counts `put` calls; the Nth (1-based) fails, either once (a transient fault that a
//! retry survives) or from then on (a dead disk). With `land_then_fail`, the failing write
//! is first applied and then reported as failed, like a response lost on the network.

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions,
    PutPayload, PutResult, Result,
};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Copy)]
pub struct FaultPlan {
    /// Which write fails (1-based).
    pub nth_write: usize,
    /// Keep failing every write after the first fault.
    pub persistent: bool,
    /// Apply the write, then report failure.
    pub land_then_fail: bool,
    /// Behave like a service without conditional writes: a create-only write silently
    /// replaces an existing object.
    pub ignore_create: bool,
    /// Count deletes as writes (and fail them): a process that dies between deletes.
    pub deletes: bool,
}

pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: FaultPlan,
    writes: AtomicUsize,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan) -> Self {
        FaultyStore { inner, plan, writes: AtomicUsize::new(0) }
    }

    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    fn should_fail(&self) -> bool {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        n == self.plan.nth_write || (self.plan.persistent && n > self.plan.nth_write)
    }

    fn fault(location: &Path) -> object_store::Error {
        object_store::Error::Generic { store: "faulty", source: format!("injected write fault at {location}").into() }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, mut opts: PutOptions) -> Result<PutResult> {
        if self.plan.ignore_create {
            opts.mode = object_store::PutMode::Overwrite;
        }
        if self.should_fail() {
            if self.plan.land_then_fail {
                self.inner.put_opts(location, payload, opts).await?;
            }
            return Err(Self::fault(location));
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        if self.should_fail() {
            return Err(Self::fault(location));
        }
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        if self.plan.deletes && self.should_fail() {
            return Err(Self::fault(location));
        }
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}
