"""digits-app: federated handwritten-digit classification with Flower and NumPy."""
