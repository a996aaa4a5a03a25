"""What a run looked like over time: its timeline (`timeline`) and the HTML page drawn from it
(`html`), shared by `ringkv check`, `ringkv bench` and `ringkv sim`."""
