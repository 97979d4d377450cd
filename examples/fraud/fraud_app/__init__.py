"""Provider fraud detection with scikit-learn, SMOTE and FedAvg."""
