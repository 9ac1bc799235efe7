"""Posed multi-view data for GST: procedural scenes (`synthetic`), dataset readers (`formats`,
`colmap`), pair sampling and preprocessing (`pairs`), the synthetic writer (`make_synthetic`) and
the pre-tokenised cache (`token_cache`). Conventions are in `cameras`."""
