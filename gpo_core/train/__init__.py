"""GPO training: the spec, tokenized pairs, the shared-prompt forward, the reference cache, the loop
and its launchers (in this process or on Ray Train)."""
