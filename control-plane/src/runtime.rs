//! Async runtimes of the control plane's own, beside the main one: the fleet
//! gateway's (`fleet::runtime`), the HTTP handlers' two lanes (`web::HandlerPool`) and
//! the PostgreSQL backend's (`store::pg`).

/// A runtime that stops without waiting for its tasks when dropped: it goes wherever
/// its last owner goes, often on an async thread, where a blocking shutdown panics.
pub struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    pub fn new(runtime: tokio::runtime::Runtime) -> OwnedRuntime {
        OwnedRuntime(Some(runtime))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("a runtime is taken only when it is dropped")
            .handle()
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
