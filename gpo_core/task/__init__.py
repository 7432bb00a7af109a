"""The built-in summarization task: synthetic documents with a known gold reward, a local tokenizer,
a tiny SFT reference policy, Bradley-Terry preference pairs and an oracle judge. It lets the whole
pipeline run offline on a CPU and measure true win rates."""
