//! The store conformance suite, run on the in-memory store itself.
#![cfg(feature = "testing")]

#[tokio::test]
async fn memory_store_passes_the_conformance_suite() {
    tollgate::testing::conformance(|clock| tollgate::MemoryStore::builder().clock(clock).build()).await;
}
