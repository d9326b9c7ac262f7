"""discovery: an active-learning engine that finds new inorganic crystals.

Heavy dependencies (torch, ray, mlflow, gpaw, chgnet) are imported only inside the
implementations that need them, so importing this package is cheap.
"""

__version__ = "0.1.0"
