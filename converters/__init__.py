"""GE converters for torchair: one module per GE operator."""
