//! The function listing behind `engine::functions::list`, cached against the core's functions
//! generation: a listing of 100k functions is built once per change, not once per call.

use std::sync::Arc;

use iii_core::{Core, FunctionEntry};
use parking_lot::Mutex;
use serde_json::Value;

use super::views::function_summary;

/// One function as listings show it, with what their filters look at.
pub(super) struct Listed {
    /// The function itself (id, description).
    pub func: Arc<FunctionEntry>,
    /// Its worker's name at the time the listing was built.
    pub worker_name: String,
    /// Engine-internal: shown only with `include_internal`.
    pub hidden: bool,
    /// The summary object listings return.
    pub summary: Value,
}

/// The last listing built and the functions generation it reflects.
#[derive(Default)]
pub(super) struct ListingCache {
    last: Mutex<Option<(u64, Arc<[Listed]>)>>,
}

impl ListingCache {
    /// Every function, sorted by id then namespace; rebuilt only when the generation moved.
    pub fn functions(&self, core: &Core) -> Arc<[Listed]> {
        // Read before the table: a change racing the build bumps the generation after it has
        // changed the table, so a stale listing is never stored under a newer generation.
        let generation = core.functions_generation();
        let mut last = self.last.lock();
        if let Some((g, listed)) = last.as_ref() {
            if *g == generation {
                return listed.clone();
            }
        }
        let listed: Arc<[Listed]> = core
            .all_functions()
            .into_iter()
            .map(|func| Listed {
                worker_name: func.worker_name(),
                hidden: (func.id.starts_with("engine::")
                    && !func.id.starts_with("engine::queue::"))
                    || func.is_internal(),
                summary: function_summary(&func),
                func,
            })
            .collect();
        *last = Some((generation, listed.clone()));
        listed
    }
}
