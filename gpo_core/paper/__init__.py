"""The paper's experiments, reproduced: the 3-action bandit (section 4.1), the mixture-of-Gaussians
counterexample (section 4.2) and the loss plots (Fig. 1/2)."""
