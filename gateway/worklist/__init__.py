"""`/workitems`: simple JSON workitems kept in the PACS as UPS-RS workitems, answered in the MWL layout."""
