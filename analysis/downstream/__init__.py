"""What a VAE's failure costs downstream (``pyrofail.analysis.downstream``).

* :mod:`~pyrofail.analysis.downstream.attacks`: adversarial robustness of the encoder;
* :mod:`~pyrofail.analysis.downstream.disentanglement`: MIG and DCI of the learned code;
* :mod:`~pyrofail.analysis.downstream.outliers`: outlier detection by log p(x), with AUROC;
* :mod:`~pyrofail.analysis.downstream.self_consistency`: whether the encoder encodes its own
  decoder's samples (Cemgil et al. 2020).
"""
