"""PoDD: poster dataset distillation (geometry, class order, labels, RaT-BPTT, ZCA)."""
