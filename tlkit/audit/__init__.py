"""The data audit (issue 19): what is wrong with a data set, found from the features tlkit already cached."""
