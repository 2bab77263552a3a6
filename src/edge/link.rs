//! Affiliate links as partners share them, built the same way by the API
//! and by `lastclick link`.

use crate::ids::{CampaignSlug, PartnerId};

/// `{base}/r/{partner}[/{campaign}][?utm_term=…]`.
pub fn affiliate_link(
    base_url: &str,
    partner: &PartnerId,
    campaign: Option<&CampaignSlug>,
    term: Option<&str>,
) -> String {
    let mut link = format!("{}/r/{partner}", base_url.trim_end_matches('/'));
    if let Some(campaign) = campaign {
        link.push('/');
        link.push_str(campaign.as_str());
    }
    if let Some(term) = term {
        link.push_str("?utm_term=");
        link.extend(form_urlencoded::byte_serialize(term.as_bytes()));
    }
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_carry_partner_campaign_and_encoded_term() {
        let partner = PartnerId::parse("acme").unwrap();
        let campaign = CampaignSlug::parse("spring").unwrap();
        assert_eq!(
            affiliate_link(
                "https://go.example.com/",
                &partner,
                Some(&campaign),
                Some("a b&c")
            ),
            "https://go.example.com/r/acme/spring?utm_term=a+b%26c"
        );
        assert_eq!(
            affiliate_link("https://go.example.com", &partner, None, None),
            "https://go.example.com/r/acme"
        );
    }
}
