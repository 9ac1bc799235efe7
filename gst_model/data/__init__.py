"""Posed multi-view data for GST: procedural scenes (`synthetic`), dataset readers (`formats`,
`colmap`, `rgbd`, `kapture`, `bags`), the datasets training and evaluation read by name (`registry`),
pair sampling and preprocessing (`pairs`), the synthetic writer (`make_synthetic`) and the pre-tokenised
cache (`token_cache`). Conventions are in `cameras`."""
