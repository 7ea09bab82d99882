"""Finite-width interpreters: dense (real Gaussian matrices), lazy (Gram-conditioned MatMuls, O(n)), exact (Grams
and Bartlett factors, cost independent of n) and coupled finite/limit draws, all run by one block runner."""
